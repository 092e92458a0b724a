"""``python -m phaseledger.testing.crash``: run one crash-harness child (see :func:`child_main`)."""

from phaseledger.testing.crash._child import child_main

if __name__ == "__main__":  # pragma: no cover - children start through child_main()
    child_main()
