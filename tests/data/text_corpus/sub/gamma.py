def gamma(x):
    return x * 2  # doubles

def gamma(x):
    return x * 2  # doubles

def gamma(x):
    return x * 2  # doubles

def gamma(x):
    return x * 2  # doubles

def gamma(x):
    return x * 2  # doubles

