"""python -m fastgrad, or the `fastgrad` command pip installs: --version, --help, and `demo`, which trains
micrograd's moons classifier and times it."""
import argparse
import sys

from fastgrad import demo
from fastgrad._version import __version__


def whole_number(minimum=None):
    """An argparse type for an int of at least `minimum`, whose errors say what was expected: for a ValueError,
    argparse would print the function's name ("invalid parse value: 'abc'")."""
    def parse(text):
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if minimum is not None and number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {number}")
        return number
    return parse


def parser(prog):
    main = argparse.ArgumentParser(
        prog=prog, description="fastgrad: micrograd's scalar autograd with a compiled Value node.")
    main.add_argument("--version", action="version", version=f"fastgrad {__version__}")
    commands = main.add_subparsers(dest="command", required=True, metavar="command")
    demo_command = commands.add_parser(
        "demo", help="train micrograd's moons classifier and time it against micrograd's algorithm",
        description="Train micrograd's moons classifier (MLP(2, [16, 16, 1]), hinge loss, SGD) on fastgrad, "
                    "batched by default, time it against micrograd's algorithm in plain Python, and write "
                    "moons_decision_boundary.png (needs matplotlib) and neuron.svg (needs graphviz's dot).")
    # Its errors show its own usage: the unknown arguments too (main() sends them here).
    demo_command.set_defaults(command_parser=demo_command)
    demo_command.add_argument("--steps", type=whole_number(minimum=1), default=100,
                              help="training steps (default: 100)")
    demo_command.add_argument("--points", type=whole_number(minimum=1), default=100,
                              help="moons points to train on (default: 100)")
    paths = demo_command.add_mutually_exclusive_group()
    paths.add_argument("--compiled", dest="path", action="store_const", const="compiled", default="batched",
                       help="replay the whole loss's compiled graph (a copy of the model a point) instead of "
                            "running one point's graph over all the points")
    paths.add_argument("--eager", dest="path", action="store_const", const="eager",
                       help="train on the exact graph, a node per op built anew each step")
    demo_command.add_argument("--out", default=".", metavar="DIR",
                              help="folder for the files, created if missing (default: the current folder)")
    demo_command.add_argument("--seed", type=whole_number(), default=1337,
                              help="seed of the points and the initial weights (default: 1337)")
    return main


def main(argv=None, prog="python -m fastgrad"):
    main_parser = parser(prog)
    args, unknown = main_parser.parse_known_args(argv)
    if unknown:       # argparse would report them with the top-level usage, which does not list the demo's options
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        demo.run(steps=args.steps, out=args.out, seed=args.seed, path=args.path, points=args.points)
    except demo.DemoError as error:
        print(f"{prog} demo: error: {error}", file=sys.stderr)
        return 1
    return 0


def command():
    """The `fastgrad` command: unlike `python -m`, it never imports a fastgrad folder in the current directory."""
    return main(prog="fastgrad")


if __name__ == "__main__":
    sys.exit(main())
