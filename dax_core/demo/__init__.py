"""End-to-end demo and test support: small random text encoder and VAE, a headless ComfyUI, the README's main job.

Nothing here imports ComfyUI: the random weights are written from our own key/shape schemas and ComfyUI runs as a
subprocess (``comfy_server``).
"""
