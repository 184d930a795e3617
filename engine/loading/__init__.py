"""Model files: folders and their checks, checkpoints (safetensors, Meta .pth), the built-in model,
and the loader that puts a model together."""
