"""``python -m adamx.benchmarks``: see `adamx.benchmarks`."""

from adamx.benchmarks import main

if __name__ == "__main__":
    main()
