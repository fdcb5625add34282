"""python -m fastgrad, or the `fastgrad` command pip installs: --version, --help, and `demo`, which trains
micrograd's moons classifier and times it."""
import argparse
import sys

from fastgrad import demo
from fastgrad._version import __version__


def positive_int(text):
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def parser(prog):
    main = argparse.ArgumentParser(
        prog=prog, description="fastgrad: micrograd's scalar autograd with a compiled Value node.")
    main.add_argument("--version", action="version", version=f"fastgrad {__version__}")
    commands = main.add_subparsers(dest="command", required=True, metavar="command")
    demo_command = commands.add_parser(
        "demo", help="train micrograd's moons classifier and time it against micrograd's algorithm",
        description="Train micrograd's moons classifier (MLP(2, [16, 16, 1]), hinge loss, SGD, 100 points) on "
                    "fastgrad, time it against micrograd's algorithm in plain Python, and write "
                    "moons_decision_boundary.png (needs matplotlib) and neuron.svg (needs graphviz's dot).")
    demo_command.add_argument("--steps", type=positive_int, default=100, help="training steps (default: 100)")
    demo_command.add_argument("--eager", action="store_true", help="train on the exact graph, a node per op "
                              "built anew each step, instead of replaying the compiled graph")
    demo_command.add_argument("--out", default=".", metavar="DIR",
                              help="folder for the files, created if missing (default: the current folder)")
    demo_command.add_argument("--seed", type=int, default=1337,
                              help="seed of the points and the initial weights (default: 1337)")
    return main


def main(argv=None, prog="python -m fastgrad"):
    args = parser(prog).parse_args(argv)
    try:
        demo.run(steps=args.steps, out=args.out, seed=args.seed, compiled=not args.eager)
    except demo.DemoError as error:
        print(f"{prog} demo: error: {error}", file=sys.stderr)
        return 1
    return 0


def command():
    """The `fastgrad` command: unlike `python -m`, it never imports a fastgrad folder in the current directory."""
    return main(prog="fastgrad")


if __name__ == "__main__":
    sys.exit(main())
