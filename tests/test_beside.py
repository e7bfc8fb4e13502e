"""``Beside``: a call on a thread of its own, its value or its exception handed back
on the caller's thread."""

import threading

import pytest

from flowing.beside import Beside


def test_the_value_comes_back_from_the_thread_it_ran_on():
    seen = []
    call = Beside(lambda: seen.append(threading.current_thread().name) or 42, "flowing-test")
    assert call.result() == 42 and call.result() == 42
    assert seen == ["flowing-test"]


def test_an_exception_is_raised_again_on_the_callers_thread_even_a_base_exception():
    class Boom(BaseException):
        pass

    def fail():
        raise Boom("from the thread")

    call = Beside(fail, "flowing-test")
    with pytest.raises(Boom, match="from the thread"):
        call.result()
