"""`python -m fastbp info` prints the build and runtime configuration; `python -m fastbp compare [OP ...]`
runs the registry's ops on the compiled kernels and the NumPy references and prints the differences."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastbp", description="fastbp command line")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="print version, compiled kernels, OpenMP, threads and BLAS")
    cmp = sub.add_parser("compare", help="compiled kernels vs NumPy references on the registry's samples")
    cmp.add_argument("ops", nargs="*", help="op names (default: every op in the registry)")
    args = parser.parse_args(argv)
    if args.command in (None, "info"):
        import fastbp
        fastbp.show_config()
        return 0
    from fastbp.registry import compare
    return compare.main(tuple(args.ops))


if __name__ == "__main__":
    sys.exit(main())
