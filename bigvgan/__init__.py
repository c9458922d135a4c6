"""BigVGAN vocoders: v1 (SelVA's 16 kHz ``best_netG.pt``) and v2 (NVIDIA's 44.1 kHz release)."""
