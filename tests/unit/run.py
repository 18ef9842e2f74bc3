"""Runs the pure-logic unit tests inside the real MicroPython interpreter.

Usage: MICROPYPATH=lib micropython tests/unit/run.py [module ...]
Every function named test_* in every tests/unit/test_*.py is called; a failure is an
exception. Ends with the line 'unit: N passed, M failed'.
"""

import os
import sys

HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, HERE)


def main():
    names = sys.argv[1:] or sorted(
        f[:-3] for f in os.listdir(HERE) if f.startswith("test_") and f.endswith(".py")
    )
    passed = failed = 0
    for name in names:
        mod = __import__(name)
        for attr in sorted(dir(mod)):
            if not attr.startswith("test_"):
                continue
            try:
                getattr(mod, attr)()
                passed += 1
            except Exception as e:
                failed += 1
                print("FAIL %s.%s" % (name, attr))
                sys.print_exception(e)
    print("unit: %d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed or not passed else 0)


main()
