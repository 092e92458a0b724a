"""``python -m phaseledger.cli``: the same as the ``phaseledger`` command."""

from phaseledger.cli import main

if __name__ == "__main__":
    main()
