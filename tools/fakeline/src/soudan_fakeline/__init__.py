"""A local fake of the LINE platform (tests, benchmarks, demo). Never used in production."""
