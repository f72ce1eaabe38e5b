"""``python -m ddpm_lib train …`` / ``python -m ddpm_lib sample …``: see ``ddpm_lib.cli``."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
