"""``python -m colorflow_core ...`` → the headless CLI.

The CLI's imports (torch, diffusers, ...) take seconds: a Ctrl-C during them is an interruption like
any other (exit 130, one line), not a traceback.
"""
import sys

EXIT_INTERRUPTED = 130  # = cli.EXIT_INTERRUPTED (cli itself may be the import that was interrupted)


def run() -> int:
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("\ninterrupted while starting: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    return main()


if __name__ == "__main__":
    sys.exit(run())
