"""`pglab bench`: the load generator behind every performance number of the course.

`harness` measures (interleaved rounds, percentiles, CPU per operation) and holds the
command; `scenarios` are the comparisons it runs; `production` puts the four
production pools of lab 15 side by side; `plots` draws the committed figures.
"""

from .harness import Measurement, Settings, Silent, measure, percentile, register

__all__ = ["Measurement", "Settings", "Silent", "measure", "percentile", "register"]
