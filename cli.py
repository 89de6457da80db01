"""`python cli.py ...` is the same as `offline-rl ...`."""

from offline_rl.cli import main

if __name__ == "__main__":
    main()
