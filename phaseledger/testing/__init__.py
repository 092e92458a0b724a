"""Tools to test workflows: hypothesis strategies and crash harnesses."""
