"""Thin client library for the snapd workspace snapshot daemon."""
