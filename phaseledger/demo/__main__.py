"""``python -m phaseledger.demo``: the demo (and the child processes it starts)."""

from phaseledger.demo.runner import main

if __name__ == "__main__":
    main()
