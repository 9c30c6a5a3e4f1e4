def main() -> None:
    raise SystemExit("soudan-fakeline: not built yet")
