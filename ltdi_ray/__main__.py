from ltdi_ray.cli import main

main()
