from ajr_supervisor.cli import main

if __name__ == "__main__":
    main()
