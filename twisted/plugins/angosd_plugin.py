from twisted.application.service import ServiceMaker

angosd = ServiceMaker("angosd", "angosd.daemon.tap", "An OCI Distribution v1.1 container registry.", "angosd")
