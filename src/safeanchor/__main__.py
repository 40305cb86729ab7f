"""``python -m safeanchor ...`` runs the ``safeanchor`` command (as launchers such as torchrun expect)."""

from safeanchor.cli import main

if __name__ == "__main__":
    main()
