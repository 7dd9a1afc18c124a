"""clplat: continual- and online-learning experiments (training wing) and a continual-inference
streaming runtime (streaming wing). Importing the package is cheap: heavy modules load lazily."""

__version__ = "0.1.0"
