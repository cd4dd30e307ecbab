from .base import main

raise SystemExit(main())
