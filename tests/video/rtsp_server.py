#!/usr/bin/env python3
"""A real RTSP server for the capture tests: GStreamer's gst-rtsp-server (Debian's
gir1.2-gst-rtsp-server-1.0) serving an H.264 Matroska file at rtsp://ADDRESS:PORT/live (ADDRESS: 127.0.0.1 unless
--address names another, such as a test node's bridge). Each client gets the file from its start.
Prints "ready" once listening.

usage: rtsp_server.py [--address ADDRESS] FILE PORT [USER PASSWORD]
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

address = "127.0.0.1"
if sys.argv[1] == "--address":
    address = sys.argv[2]
    del sys.argv[1:3]
path, port = sys.argv[1], sys.argv[2]
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address(address)
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f'( filesrc location="{path}" ! matroskademux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )'
)
factory.set_shared(False)
if len(sys.argv) > 4:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "camera")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(sys.argv[3], sys.argv[4]), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_role_from_structure(
        Gst.Structure.new_from_string("camera, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")
    )
    factory.set_permissions(permissions)
server.get_mount_points().add_factory("/live", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on port {port}")
print("ready", flush=True)
GLib.MainLoop().run()
