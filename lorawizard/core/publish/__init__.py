"""Publishing a kept LoRA, its samples and a model card to the Hugging Face Hub."""
