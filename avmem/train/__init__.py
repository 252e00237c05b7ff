"""Training video-SALMONN S style models: data, LoRA, forward pass and the training loop."""
