"""The adaptation step: CML training traces from BFCL, LoRA training, export to GGUF, evaluation."""
