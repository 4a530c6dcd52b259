# -*- coding: utf-8 -*-
# Generates the expected strings of `legacy::repr_matches_a_real_python_2_7` (run it with a real
# CPython 2.7, e.g. pyenv 2.7.18: python2.7 legacy_repr_py2.py). The inputs mirror PY2_PROCS there.
procs = [
    # pid, cmd, cpu, mem, disk_write, disk_read, net_in, net_out, start, shutdown
    (101, u"it's", 90.0, 33.333333, 1e10, 123456789.125, 1e-05, 0.5, 1764000000.5, None),
    (102, u'say "hi"', 80.0, 0.1, 1.005, 2.675, 0.0, 100.0, 1234.0, 1764000123.25),
    (103, u'both \'"', 70.0, 99.999, 5e-3, 9876543210.987, 7.77777, 0.125, 0.0, None),
    (104, u'back\\slash', 60.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, None),
    (105, u'tab\there\nnl\rcr', 50.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, None),
    (106, u'ctl\x01\x1f', 40.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, None),
    (107, u'del\x7f', 30.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, None),
    (108, u'latin\xe9\xff', 20.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, None),
    (109, u'bmp\u65e5\u2028', 10.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, None),
    (110, u'astral\U0001F600', 5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, None),
]
def r2(v):
    return round(v * 100.0) / 100.0
for (pid, cmd, cpu, mem, dw, dr, ni, no, start, sd) in procs:
    fields = [
        (u'net_incoming', r2(ni)), (u'shutdown_time', None if sd is None else r2(sd)),
        (u'mem', r2(mem)), (u'net_outgoing', r2(no)), (u'cmd', cmd), (u'pid', pid),
        (u'instance_id', u'py1'), (u'disk_write', r2(dw)), (u'disk_read', r2(dr)),
        (u'create_date', u'@DATE@'), (u'_id', u'@ID@'), (u'cpu_util', r2(cpu)),
        (u'running_time', r2(start)),
    ]
    parts = []
    for k, v in fields:
        if k == u'_id':
            parts.append("%r: ObjectId('@ID@')" % k)
        else:
            parts.append("%r: %r" % (k, v))
    s = "{" + ", ".join(parts) + "}"
    # As a Rust raw string.
    print('    r#"%s"#,' % s)
