"""Meta-learning research modules (LPG-lite with GROOVE's level sampling: `offline_rl.meta.lpg`)."""
