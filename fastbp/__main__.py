"""The `fastbp` command (also `python -m fastbp`):

  fastbp --version                 the version
  fastbp info [--json]             build and runtime configuration (for bug reports: paste the --json)
  fastbp compare [--json] [OP ...] every registry op on the compiled kernels vs the NumPy references; exits 1
                                   when any op is outside its tolerance, 2 for an unknown op name
"""
import argparse
import json
import sys


def main(argv=None):
    from fastbp._version import __version__

    parser = argparse.ArgumentParser(prog="fastbp", description="fastbp command line")
    parser.add_argument("--version", action="version", version=f"fastbp {__version__}")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="print version, build, compiled kernels, OpenMP, threads and BLAS")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    cmp = sub.add_parser("compare", help="compiled kernels vs NumPy references on the registry's samples")
    cmp.add_argument("ops", nargs="*", help="public function names (e.g. nll_loss, conv2d, SGD) or registry "
                                            "names (default: every op)")
    cmp.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.command in (None, "info"):
        import fastbp
        if getattr(args, "json", False):
            print(json.dumps(fastbp._config.config(), indent=1, sort_keys=True, default=str))
        else:
            fastbp.show_config()
        return 0
    from fastbp.registry import compare
    return compare.main(tuple(args.ops), as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
