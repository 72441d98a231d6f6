"""reproml: a faithful, fast reproduction of Ravi & Larochelle (ICLR 2017), the meta-learner LSTM."""

__version__ = "0.1.0"
