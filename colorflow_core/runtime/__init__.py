"""Where and how the networks run: device, dtype, batch sizes, offload, compile (`performance`), and
the per-page random draws (`seeding`)."""
