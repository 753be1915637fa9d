"""Tests of the benchmark scripts' own logic (exports, bookkeeping), never of their timings."""
