import predilect.serving.front as f, os
orig = f.render_config
def patched(**kw):
    text = orig(**kw)
    return text.replace("keepalive_requests 1000000000000;", "keepalive_requests %s;" % os.environ.get("KA", "50"))
f.render_config = patched
