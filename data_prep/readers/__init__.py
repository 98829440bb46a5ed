"""Readers: each parses one raw format into a `RawDataset` (see `data_prep.raw`)."""
from data_prep.readers.amazon import read_amazon
from data_prep.readers.generic import read_generic
from data_prep.readers.generic_spec import GenericSpec
from data_prep.readers.movielens import read_movielens
from data_prep.readers.yelp import read_yelp

__all__ = ["GenericSpec", "read_amazon", "read_generic", "read_movielens", "read_yelp"]
