"""`python -m fastbp info` prints the build and runtime configuration."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastbp", description="fastbp command line")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="print version, compiled kernels, OpenMP, threads and BLAS")
    args = parser.parse_args(argv)
    if args.command in (None, "info"):
        import fastbp
        fastbp.show_config()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
