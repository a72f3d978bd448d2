import VFIOHost
