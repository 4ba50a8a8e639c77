"""ninepd as a vhost-user-vsock device: vsock for guests on hosts without /dev/vhost-vsock.

    memory.py     the guest memory table: guest addresses -> memoryview slices, bounds-checked
    virtqueue.py  split virtqueues over that memory (pure; hostile rings break the queue only)
    vsock.py      virtio-vsock stream sockets: packets, connections, credit flow control (pure)
    protocol.py   the vhost-user wire format (pure)
    device.py     the trio shell: the vhost-user socket, eventfds, in-process 9P streams
"""
