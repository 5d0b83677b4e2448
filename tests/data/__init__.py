"""Tests of kdg.data (a package so that its conftest does not take the name `conftest`)."""
