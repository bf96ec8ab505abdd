"""The Dagster code location of the example (see workspace.yaml)."""

from examples.card_fraud import features
from skewless import build_definitions, load_repository

defs = build_definitions(load_repository(features))
