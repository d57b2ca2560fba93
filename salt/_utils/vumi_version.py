"""The bundle's version: what ``vumi.version`` reports and the fleet runner compares across hosts."""

VERSION = "0.2.0"
