// DAX front-end extension: shows a node's summary (the sampler's steps and time, the attention kernels chosen)
// under the node.
import { app } from "../../scripts/app.js";

const SUMMARY_WIDGET = "dax_summary";
const NODES_WITH_SUMMARY = new Set([
  "DaxMultiGPUSampler",
  "DaxSamplerAdvanced",
  "DaxSetAttentionBackend",
  "DaxRadialAttention",
]);

app.registerExtension({
  name: "dax.sampler.summary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES_WITH_SUMMARY.has(nodeData.name)) {
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
