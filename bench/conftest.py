import os
import sys

# Benchmarks import the implementations from the package and the shared results writer.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
