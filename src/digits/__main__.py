from digits.cli import main

if __name__ == "__main__":  # not when a fold's training process (multiprocessing spawn) imports it
    raise SystemExit(main())
