"""``python -m icdistill`` (also what ``torchrun -m icdistill`` runs)."""

from icdistill.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
