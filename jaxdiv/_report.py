"""Placeholder replaced in the next commit."""


def main(quick: bool = False, markdown: str | None = None) -> int:
  raise NotImplementedError
