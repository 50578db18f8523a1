// DAX front-end extension: shows the sampler's run summary (steps, time, skipped steps) under the Multi-GPU Sampler node.
import { app } from "../../scripts/app.js";

const SUMMARY_WIDGET = "dax_summary";

app.registerExtension({
  name: "dax.sampler.summary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "DaxMultiGPUSampler") {
      return;
    }
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.dax_summary?.join("\n");
      if (!text) {
        return;
      }
      let widget = this.widgets?.find((w) => w.name === SUMMARY_WIDGET);
      if (!widget) {
        widget = this.addWidget("text", SUMMARY_WIDGET, "", () => {});
        widget.serialize = false; // a display, not an input: keep it out of saved widgets_values
        widget.disabled = true;
      }
      widget.value = text;
      this.setDirtyCanvas(true, true);
    };
  },
});
