"""Training scripts for Diffusion Lab (run as files: `python train/train_lora.py --help`)."""
