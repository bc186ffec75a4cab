from linnix_exporter.cli import main

raise SystemExit(main())
