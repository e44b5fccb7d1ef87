"""xclip-lightning: X-CLIP text-video retrieval in PyTorch Lightning."""
