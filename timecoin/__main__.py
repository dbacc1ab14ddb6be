"""``python -m timecoin`` is the ``timecoin`` console script."""
from timecoin.cli import main

if __name__ == "__main__":
    main()
